from qfserve.cli import main

main()

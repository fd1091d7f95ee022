from qfserve.bench.cli import main

main()

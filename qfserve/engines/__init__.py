"""Where tokens come from: the embedded llama.cpp engine, remote OpenAI-compatible upstreams."""

import os

# llama.cpp's CPU backend parallelises with OpenMP. libgomp's idle workers spin for 300,000
# iterations by default before they sleep, and between two decode steps that spinning takes the
# cores the event loop needs to stream the answers (measured on 2 cores: 75 aggregate tokens/s at
# 8 concurrent streams by default, 87 with 10,000). Read by libgomp when it loads, so set here,
# before llama_cpp is imported; a value set in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

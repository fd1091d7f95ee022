"""`qfserve bench`: a load generator for the Qianfan route and OpenAI-compatible servers.

Modules, by role:
- workload: the prompts and conversations shipped in `bench/`;
- sse, client: one streaming request in any dialect, timed token by token;
- runner, memory: N requests at concurrency C, with the server's peak RSS sampled meanwhile;
- scenarios: the performance targets beyond plain load (conversations, disconnects);
- structured, structured_report: the same prompts free and with a JSON schema, side by side;
- baseline: llama-cpp-python generating in-process, without HTTP, in a subprocess;
- peers: starting and stopping qfserve and `llama_cpp.server` on the same model;
- stats, report: percentiles, throughput, targets, JSON and markdown;
- gateway, gateway_report, instant_upstream: what qfserve adds to time to first token in front
  of an upstream, in each dialect;
- cli: the `qfserve bench` command.
"""

"""Local stand-ins of the production parts (ARCHITECTURE.md, "Real parts"): real servers on 127.0.0.1
for `make demo` and the tests — Triton, an RTSP server, mosquitto, Prometheus."""

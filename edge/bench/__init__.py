"""edge-bench: latency and throughput of the engine on this machine (cli is the entry point), its
machine facts, roofline, reports and plots.

May import: edge (the public API), edge.runtime, edge.counting, edge.synthetic.
"""

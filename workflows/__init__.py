"""Jobs that span several packages (the experiment, the demo), between the CLI and the four.

``cli -> workflows -> {service, eval, indexer, tuner} -> core``: a workflow calls the
indexer, the tuner and eval in order and hands a typed outcome back; the CLI parses flags
and prints it.
"""

"""Pipeline parallelism: schedules as data, stage partitioning, the split of a captured
graph into stages, and the runtime on ``torch.distributed.pipelining``."""

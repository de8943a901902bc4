"""Side-by-side benchmarks of stock mmdet and ours on a GPU (``bench/gpu/run.sh``)."""

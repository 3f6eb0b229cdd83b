#!/bin/bash
cd /work/bench_head; export PYTHONPATH=/work/bench_head
for mode in on off freeze on off; do
  python /tmp/gcprobe/probe.py amended 3 $mode 2>/dev/null | grep RESULT >> /tmp/gcprobe/results.txt
done
echo finished >> /tmp/gcprobe/status

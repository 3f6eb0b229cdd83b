#!/bin/bash
for tree in bench_head bench_new; do
  cd /work/$tree; export PYTHONPATH=/work/$tree
  echo "$tree $(git rev-parse --short HEAD)" >> /tmp/gcprobe/results8.txt
  python /tmp/gcprobe/probe.py first_order 8 on 2>/dev/null | grep RESULT >> /tmp/gcprobe/results8.txt
done
echo finished >> /tmp/gcprobe/status8

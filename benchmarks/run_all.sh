#!/usr/bin/env bash
# Every figure of benchmarks/README.md, in one go (about 10 minutes on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")"
echo "== 1. decode, float32, small shape";            python bench_decode.py
echo "== 2. decode, bfloat16 (anchor: transformers float32)"; python bench_decode.py --dtype bfloat16
echo "== 3+4. late window and --samples 4, float32";  python bench_scaling.py
echo "== 5. (peak RSS: printed by 1 and 2)"
echo "== 6. cold start";                              python bench_startup.py
echo "== 7. medium shape, float32 and bfloat16";      python bench_decode.py --shape medium --tokens 128
python bench_decode.py --shape medium --tokens 128 --dtype bfloat16 --no-rss
echo "== 8. gpt2 batch: 256 prompts, 64 tokens each"; python bench_batch.py

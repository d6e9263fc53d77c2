#!/usr/bin/env bash
# Every figure of benchmarks/README.md, in one go (about 90 minutes on a 2-core machine;
# the first run also builds llama.cpp, 15-30 minutes).
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
echo "== 9. against llama.cpp: small (both sides' default and 1, 2 threads), medium (defaults)"
python bench_vs_llama.py --shapes small --threads 1,2 --rounds 3
python bench_vs_llama.py --shapes medium --rounds 3 --tokens 128
echo "== 10. under load: one busy process per core but one"
python bench_vs_llama.py --shapes small --dtypes float32,int8 --load --rounds 2 --tokens 128 --prefill-dtypes ""
echo "== 11. quality of int8 and 16-bit weights against float32"; python bench_quality.py
echo "== 12. past the window: shifted vs unshifted decode";   python bench_context.py --repeats 2
echo "== 13. long texts scored: gpt2 score vs transformers' perplexity loop"; python bench_score.py
echo "== 14. gpt2 serve: 1, 4, 16 streaming clients, beside llama_cpp.server"; python bench_serve.py
echo "== 15. int8 peak RSS (and speed against transformers float32)"; python bench_decode.py --dtype int8

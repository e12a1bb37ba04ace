#!/bin/bash
# resumable: re-run this script to continue from /work/runs/d2l/run2/state.pt
cd /work/wt-d2l
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m memory.training.d2l --out /work/runs/d2l/run2 --minutes 300 --resume \
  --init memory/checkpoints/d2l-smollm2-135m \
  --mix "family=0.35,prose=0.25,continue=0.1,haystack=0.15,fact=0.1,niah=0.05" \
  --prose-cache /work/runs/d2l/prose.jsonl --prose-max-words 130 --max-chunks 2 --chunk-tokens 128 \
  --bs 8 --kl 0 --lr 3e-4 --warmup 10 --total-steps 800 --eval-n 8 --eval-facts 4 --eval-niah 4 \
  --eval-every 15 --log-every 3 --save-every 5 --threads 1 

#!/bin/bash
# resumable: re-run to continue runs/t2l-lib
cd "$(git rev-parse --show-toplevel)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/pmem train t2l --arm all --out runs/t2l-lib --device cpu --size L --offset-rank 8 --lr 3e-4 --offset-lr 1e-3 \
    --mt-lr 1e-3 --tasks-per-step 8 --examples-per-task 1 --max-steps 1500 --minutes 45 \
    --snapshot-every 300 --save-every 100 --ceiling-per-split 1 --ceiling-steps 80 --threads 1 --resume

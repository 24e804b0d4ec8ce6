#!/bin/bash
# Stint 4 of flowers64 and stint 2 of species64, as run on one NVIDIA H200 (the device tool's
# machine, 2026-12-04) in one call of at most 10 minutes: the repository's working tree, with the
# 6,552 train and 1,637 held-out images copied to .gpu/data/{train,heldout}/<class>/, and
# OUT a folder whose files come back. Tried first on the CPU with MAXF=2 SPEC="--max-steps 2".
# flowers64 ran out of its 420 s at step 16,346 (SIGINT: a clean checkpoint); a second call on
# the same machine finished it with
#   python3 -m corolla train .gpu/data/train --out /tmp/f64 --resume --max-steps 20703 --no-progress
#   python3 -m corolla export /tmp/f64 --out $OUT/f64 --float32
# 4,847 earlier steps + 20,703 = 25,550: the reference's 50 epochs of 511 batches of 64.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,sys;print(sys.version.split()[0],torch.__version__,torch.cuda.get_device_name())"
D=.gpu/data
timeout -s INT $(left 420) python3 -m corolla train $D/train --val-data $D/heldout --preset seed64 \
  --init-from flowers64 --seed 3 --repetitions 5 --epochs 41 --max-steps ${MAXF:-20703} --no-ema-warmup \
  --out /tmp/f64 --no-progress > $OUT/f64.log 2>&1
echo "flowers64 train rc=$? at $(( $(date +%s) - T0 )) s"; tail -5 $OUT/f64.log
python3 -m corolla export /tmp/f64 --out $OUT/f64 --float32 2>&1 | tail -2
cp /tmp/f64/metrics.jsonl $OUT/f64/metrics.jsonl 2>/dev/null
if [ $(left 540) -gt 60 ]; then
timeout -s INT $(left 540) python3 -m corolla train $D/train --val-data $D/heldout --conditional --preset seed64 \
  --init-from /tmp/f64 --seed 3 --repetitions 2 --epochs 400 --ema-warmup ${SPEC:-} \
  --out /tmp/s64 --no-progress > $OUT/s64.log 2>&1
echo "species64 train rc=$? at $(( $(date +%s) - T0 )) s"; tail -5 $OUT/s64.log
python3 -m corolla export /tmp/s64 --out $OUT/s64 --float32 2>&1 | tail -2
cp /tmp/s64/metrics.jsonl $OUT/s64/metrics.jsonl 2>/dev/null
fi
ls -la $OUT $OUT/*; echo "done at $(( $(date +%s) - T0 )) s"

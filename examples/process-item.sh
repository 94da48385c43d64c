#!/bin/sh
# A stand-in for real per-item work, used by the README's first command:
# it "downloads and loads" one file, taking a little time.
# ckpt gives it the item as $1, and CKPT_JOB / CKPT_ITEM / CKPT_ATTEMPT.
sleep 0.05
echo "loaded $1 (attempt $CKPT_ATTEMPT)"

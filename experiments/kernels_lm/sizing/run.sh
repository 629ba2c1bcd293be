#!/bin/bash
# time a few updates of each LM study configuration (1 thread; sweep running beside → upper bounds)
cd /work/main
export KA_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=1
t() { name=$1; shift; s=$(date +%s.%N); python train.py "$@" trainer.validate_interval_updates=100000 trainer.evaluate_at_end=false trainer.save_interval_updates=0 hydra.run.dir=/tmp/lmtime/$name > /tmp/lmtime/$name.log 2>&1; e=$(date +%s.%N); echo "$name rc=$? $(echo "$e - $s" | bc) s"; grep "update .*/" /tmp/lmtime/$name.log | tail -1; }
t edp experiment=kernels_lm kernel=edp trainer.max_updates=200
t rf2048 experiment=feature_dim fdim=random_features_m2048 trainer.max_updates=100
t rff2048 experiment=feature_dim fdim=rff_m2048 trainer.max_updates=100
t taylor6 experiment=feature_dim fdim=taylor_p6 trainer.max_updates=100
t poly4 experiment=feature_dim fdim=polynomial_p4 trainer.max_updates=100
t long_edp experiment=long_context kernel=edp trainer.max_updates=40
t long_taylor experiment=long_context kernel=taylor trainer.max_updates=40
t long_rf experiment=long_context kernel=random_features trainer.max_updates=40

#!/bin/bash
cd /work/main
for r in 1 2 3; do
  /tmp/ovl.sh default-r$r /tmp/repo_default /tmp/ovl3 --seed $r
  c=$(python3 -c "import json;print(json.load(open('/tmp/ovl3/retrieve-default-r$r.json'))['capacity_rps'])")
  echo "r$r default cap=$c $(date +%T)"
  if [ $((r % 2)) -eq 1 ]; then order="w0 w500"; else order="w500 w0"; fi
  for v in $order; do
    /tmp/ovl.sh admission4-nice10-$v-r$r /tmp/repo_adm_$v /tmp/ovl3 --seed $r --capacity-rps $c
    echo "r$r $v $(date +%T)"
  done
done

#!/bin/bash
# Consensus check with jq: does the leading choice reach the quorum and a 2/3
# supermajority? /job/votes/votes.jsonl -> /job/out/consensus.json
set -euo pipefail
quorum=${QUORUM:-5}
jq -s --argjson quorum "$quorum" '
  (map(.choice) | group_by(.) | map({choice: .[0], n: length}) | sort_by(-.n)) as $c
  | { votes: length, quorum: $quorum, leading: $c[0].choice, leading_votes: $c[0].n,
      supermajority: ($c[0].n * 3 >= length * 2), reached: (length >= $quorum and $c[0].n * 3 >= length * 2) }
' /job/votes/votes.jsonl | tee /job/out/consensus.json

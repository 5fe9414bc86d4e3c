"""Tally the votes of one proposal: /job/votes/votes.jsonl -> /job/out/tally.json."""
import collections
import json
import sys

counts = collections.Counter()
voters = set()
with open("/job/votes/votes.jsonl") as f:
    for n, line in enumerate(f, 1):
        vote = json.loads(line)
        if vote["voter"] in voters:
            sys.exit(f"votes.jsonl:{n}: {vote['voter']} voted twice")
        voters.add(vote["voter"])
        counts[vote["choice"]] += 1
result = {"proposal": "0004", "votes": sum(counts.values()), "counts": dict(sorted(counts.items())),
          "winner": counts.most_common(1)[0][0] if counts else None}
with open("/job/out/tally.json", "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result))

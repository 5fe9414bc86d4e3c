// Verify the hash chain of a vote file: each vote's `prev` is the SHA-256 of the
// previous line (the first one's is 64 zeros). Writes /job/out/chain.json.
const fs = require("fs");
const crypto = require("crypto");
const lines = fs.readFileSync("/job/votes/votes.jsonl", "utf8").split("\n").filter(Boolean);
let prev = "0".repeat(64);
const problems = [];
lines.forEach((line, i) => {
  const vote = JSON.parse(line);
  if (vote.prev !== prev) problems.push({ line: i + 1, expected: prev, found: vote.prev });
  prev = crypto.createHash("sha256").update(line).digest("hex");
});
const result = { records: lines.length, head: prev, valid: problems.length === 0, problems };
fs.writeFileSync("/job/out/chain.json", JSON.stringify(result, null, 2));
console.log(JSON.stringify(result));
process.exit(problems.length === 0 ? 0 : 1);

"""Papermill grid runner in rounds: one kernel per point-round, sequentially, resumable.

Every round visits every point of the grid once, in its own seeded shuffled order, so drift
over a sweep (heat, background load, page cache) spreads over all points instead of reading
as a parameter effect. A phase's repetition parameters (its ROUND_SPLIT, primary first) are
divided among the rounds: the primary total T runs as T//R + (r < T%R) in round r, a
secondary one as max(1, its share). A phase without one runs the whole point in every round
(a replicate). The unit of work, of the manifest and of resuming is the point-round.

A sweep directory holds:
  run.json        the sweep's run record: grid, fixed, rounds, order_seed, round_split, status
  manifest.json   the points, and every point-round in execution order with its attempts
  points/<point>-r<round>/         each point-round's run directory (notebook, parquet)
  attempts/<point>-r<round>-a<n>/  the directory of an earlier failed or interrupted attempt
  <phase>.parquet the finished point-rounds combined, with columns `point` and `round`

The manifest is rewritten atomically at every change of state, and every step that moves a
directory can be repeated, so a sweep killed at any moment (SIGKILL included) resumes exactly:
a finished point-round is kept (adopted, if it finished before the manifest said so), a
point-round caught mid-run or failed is run again (its attempt stays recorded), and the
combined parquet holds each point-round exactly once.

Its rooms: `plan` (the grid, the points, the rounds and their shares, the visit order),
`manifest` (the sweep directory and its manifest: create, open, settle, recover), `execute`
(running the point-rounds and combining their frames).
"""

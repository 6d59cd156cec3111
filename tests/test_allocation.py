"""The allocation's retry loop: when the real packed bytes overshoot the cap, the next proposal fits."""

from search.allocation import Candidate, Option, Unit, confirm_within_cap, solve_knapsack


def test_overshooting_picks_are_replaced_even_when_they_sit_below_the_budget():
    # Coarse options: the best picks (both at 8 bits) are estimated at 97,800 bytes, 2,200 under the
    # 100,000-byte budget, but pack 3% larger than estimated: 734 bytes over the cap. Lowering the
    # budget by the overshoot alone would return the same picks (as a demo trial once did, three times).
    units = [Unit("blocks.0.*", ["blocks.0.w"]), Unit("blocks.1.*", ["blocks.1.w"])]
    options = {"blocks.0.*": [Option(4, 0.0, 30_000, 0.0, damage=1.0), Option(8, 0.0, 58_800, 0.0, damage=0.1)],
               "blocks.1.*": [Option(4, 0.0, 20_000, 0.0, damage=0.5), Option(8, 0.0, 39_000, 0.0, damage=0.05)]}
    code_bytes, cap = 5_000, 105_000
    proposals = []

    def propose(budget):
        picks = solve_knapsack(units, options, budget)
        proposals.append([o.bits for o in picks])
        return picks

    def confirm(picks):
        estimate = sum(o.bytes for o in picks)
        candidate = Candidate("knapsack", None, estimate, sum(o.damage for o in picks))
        candidate.artifact_bytes = int(estimate * 1.03) + code_bytes
        candidate.feasible = candidate.artifact_bytes <= cap
        return candidate

    best = confirm_within_cap(propose, confirm, cap - code_bytes, cap)
    assert proposals == [[8, 8], [8, 4]]
    assert best.feasible and best.artifact_bytes == int(78_800 * 1.03) + code_bytes

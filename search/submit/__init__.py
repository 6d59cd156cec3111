"""From a trial to a challenge submission: export a records-style folder (export.py), verify it by running its own
script (verify.py), measure the legality conditions on its evaluation (legality.py), and retrain it with new seeds
for the challenge's significance test (confirm.py)."""

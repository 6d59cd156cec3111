"""`search confirm` of a script study's trial (search/submit/confirm.py chooses the seeds and runs the t-test): each
new seed runs the trial's script exactly as the trial ran it (its request: command, environment, training cap, final
line, artifact), only the seed variable changed, through the script trial's own code (trial.py) with no pruner, in
results/<study>/confirm/<trial>-seed<k>/; its metrics.json is a script trial's."""

import json
import os
import shutil

from pgolf.files import read_json
from search.script import ScriptError
from search.script.run import script_command
from search.script.trial import ScriptTrialFailed, run_script_trial
from search.study import StudyError, trial_dir
from search.trialfiles import REQUEST_FILE


class ScriptSeeds:
    def __init__(self, directory: str, settings, trial, same_steps: bool, ranks: int | None, device: str | None):
        from space.spec import space_from_dict

        if same_steps or device:
            raise StudyError(f"{'--same-steps' if same_steps else '--device'}: a script study's confirm runs its script as "
                             f"the study did (its steps and device are the script's own)")
        self.request = read_json(os.path.join(trial_dir(directory, trial.number), REQUEST_FILE), f"trial {trial.number}'s request")
        self.spec = space_from_dict(settings.space, source=settings.space_source).script
        if not self.spec.seed_var:
            raise StudyError("the study's script reads no seed variable (script.seed_var is empty): new seeds cannot be given to it")
        script = self.request["script"]
        self.seed = script.get("seed")  # the trial's own
        self.ranks = ranks or script["ranks"]
        if self.ranks != script["ranks"]:
            script["command"] = script_command(script["path"], self.ranks, self.spec.interpreter or None)
            script["ranks"] = self.ranks

    def train(self, seed: int, out: str) -> None:
        staging = out + ".partial"
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier try
        os.makedirs(staging)
        script = dict(self.request["script"], seed=seed, env={**self.request["script"]["env"], self.spec.seed_var: str(seed)})
        with open(os.path.join(staging, REQUEST_FILE), "w", encoding="utf-8") as f:
            json.dump(dict(self.request, script=script, pruner=None), f, indent=2)  # every seed runs to its end
        try:
            run_script_trial(staging)
        except (ScriptTrialFailed, ScriptError) as exc:
            raise StudyError(f"seed {seed} failed: {exc} (see {staging}/train.log)") from None
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(staging, out)

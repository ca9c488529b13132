"""Commands that train the Canvas stack: `python -m erasure.train.{judges,clip,sd,gan}`, one script per model."""

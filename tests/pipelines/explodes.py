raise RuntimeError("boom while importing the pipeline")

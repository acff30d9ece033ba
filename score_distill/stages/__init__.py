"""The method's data stages, in the order they run (docs/method.md):

    bc.py     stage 0: the teacher solves a share of the train tasks; its correct solutions
    mps.py    stage 1: mentored problem-solving, the teacher fixes the student's first error
    split.py  stage 2: solved MPS tasks -> the SFT set and the RL items, split by question

Training on what they write is `train/` (sft.py, then rl.py for stage 3).
"""

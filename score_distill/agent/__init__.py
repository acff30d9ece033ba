"""The CodeAct agent: the step format and the rollout loop."""

"""The load-test wing: the plan customer success write, the permission hospital IT approve for a
window (a gate), and the reports and per-second series load-test runs leave.

The load itself is sent by ``connections.loadgen`` (no Django in it); the step that drives it is
``onboarding.steps.loadtest``.
"""

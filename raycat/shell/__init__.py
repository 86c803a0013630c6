"""The Ray shells: where a run happens. Ray Data's file reads, Ray Train's workers and driver, Ray
Tune's trials, the scoring actors and their pool, sessions, group watches, console relays, resume
notes, tracking and the fault-injection points tests name. May import the core, the edge, the shell,
and the face's plain data (`config`, `errors`): docs/architecture.md."""

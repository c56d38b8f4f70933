"""The base of every error that means "the user's input or setting is wrong", and the one
line `launch.py` prints for each kind of failure the user can act on.

    try: pipelines.run(config, workdir)
    except errors.UserError as e: print(f"error: {e}")      # launch.py: one line, exit 2
    except errors.EnvironmentProblem as e: ...               # launch.py: one line, exit 3
    message, hint, status = errors.one_line(e, stage=..., workdir=W)   # or None: a bug

ConfigError, DataLayoutError, WeightsNotFoundError, ModelCardError, SearchError and the
porting errors derive from it, so the entry point can print one clear line for a user's
mistake and keep full tracebacks for bugs.
"""

import errno


class UserError(Exception):
    """A problem the user can fix (a setting, a file, a folder); the message says which."""

    hint: str = ""


class EnvironmentProblem(Exception):
    """The machine cannot do what was asked (e.g. not enough disk): the message says what,
    where and how much. launch.py prints one line and exits 3 (2: a configuration mistake)."""

    hint: str = ""


class Stopped(KeyboardInterrupt):
    """Ctrl-C ending a run that has nothing to resume (serve): launch.py prints the message
    alone, one line, and exits 130."""


_RESUME = "finished work is kept in {w}; run the same command again to resume"


def one_line(e: BaseException, *, stage: str, workdir) -> tuple[str, str, int] | None:
    """(message, hint, exit status) for what the user can act on; None for a bug (its
    traceback is the useful output). 2: a setting, file or folder; 3: the machine (disk
    full, out of memory); 130: Ctrl-C (a Stopped one has no hint: nothing to resume)."""
    if isinstance(e, Stopped):
        return (str(e), "", 130)
    if isinstance(e, KeyboardInterrupt):
        return (f"interrupted during {stage}", _RESUME.format(w=workdir), 130)
    if isinstance(e, UserError):
        return (str(e), e.hint, 2)
    if isinstance(e, EnvironmentProblem):
        return (str(e), e.hint, 3)
    for cause in _chain(e):
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            where = f" writing {cause.filename}" if cause.filename else ""
            return (f"the disk is full{where} (during {stage})",
                    "free some space; " + _RESUME.format(w=workdir), 3)
        if "RESOURCE_EXHAUSTED" in str(cause) and "alloc" in str(cause).lower():
            return (f"out of memory during {stage}: {str(cause).splitlines()[0][:200]}",
                    "lower the batch size (finetune.batch_size, staged.batch_size, "
                    "predict.batch_size) or use train.grad_accum_steps; "
                    + _RESUME.format(w=workdir), 3)
    return None


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


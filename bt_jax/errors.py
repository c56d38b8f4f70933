"""The base of every error that means "the user's input or setting is wrong".

    try: pipelines.run(config, workdir)
    except errors.UserError as e: print(f"error: {e}")      # launch.py: one line, exit 2
    except errors.EnvironmentProblem as e: ...               # launch.py: one line, exit 3

ConfigError, DataLayoutError, WeightsNotFoundError, ModelCardError, SearchError and the
porting errors derive from it, so the entry point can print one clear line for a user's
mistake and keep full tracebacks for bugs.
"""


class UserError(Exception):
    """A problem the user can fix (a setting, a file, a folder); the message says which."""

    hint: str = ""


class EnvironmentProblem(Exception):
    """The machine cannot do what was asked (e.g. not enough disk): the message says what,
    where and how much. launch.py prints one line and exits 3 (2: a configuration mistake)."""

    hint: str = ""

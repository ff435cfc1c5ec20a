"""User-facing errors: the CLI prints their message without a traceback."""


class XtuneError(Exception):
    """An error caused by the user's input (config, data, paths) rather than by a bug."""


class ConfigError(XtuneError):
    pass


class DataError(XtuneError):
    pass

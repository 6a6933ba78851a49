"""The e2e tests' Asterisk harness lives in the package (fastagi/dev/harness/), so
that `extbill sandbox` can reuse it; this module keeps the tests' old import path."""

from fastagi.dev.harness import (  # noqa: F401
    ASTERISK_BIN,
    BRANCH_CONTEXT,
    CALLER_CONTEXT,
    DEFAULT_ROOT,
    EXTBILL_SECRET,
    EXTBILL_USER,
    HARNESS_SECRET,
    HARNESS_USER,
    IVR_CONTEXT,
    PROJECT,
    TEST_EXTENSIONS,
    TEST_MODULES,
    Ami,
    AmiError,
    Asterisk,
    Call,
    Message,
    default_root,
    free_port,
    project_dir,
    root_problem,
)

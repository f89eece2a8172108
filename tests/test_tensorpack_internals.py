"""tensorpack's private names that runtime/tensorpack_internals.py relies on, each checked by name, and
no other module reaching for them."""
import glob
import inspect
import os
import re

import pytest

from conftest import ROOT
from runtime.tensorpack_internals import PRIVATE_NAMES

INTERNALS = os.path.join(ROOT, 'runtime', 'tensorpack_internals.py')


def assigned_in_class_source(owner, name):
    """Whether `self.<name> = ...` stands in the source of `owner` or one of its tensorpack bases."""
    sources = [inspect.getsource(cls) for cls in owner.__mro__ if cls.__module__.startswith('tensorpack')]
    return any(re.search(r'self\.{}\s*='.format(re.escape(name)), source) for source in sources)


@pytest.mark.parametrize('owner, name, use', PRIVATE_NAMES,
                         ids=['{}.{}'.format(owner.__name__, name) for owner, name, _ in PRIVATE_NAMES])
def test_tensorpack_still_has_the_private_name(owner, name, use):
    if use.startswith('class attribute'):
        assert hasattr(owner, name)
    else:
        assert assigned_in_class_source(owner, name)


def project_modules():
    """The project's Python modules (not its tests), but the internals module."""
    paths = glob.glob(os.path.join(ROOT, '*.py')) + glob.glob(os.path.join(ROOT, '*', '*.py'))
    return [p for p in paths if os.sep + 'tests' not in p and os.path.abspath(p) != INTERNALS]


def test_no_other_module_uses_the_private_names():
    names = sorted({name for _, name, _ in PRIVATE_NAMES})
    pattern = re.compile(r'(?<!tensorpack_internals)\.({})\b'.format('|'.join(map(re.escape, names))))
    uses = ['{}: .{}'.format(os.path.relpath(path, ROOT), match.group(1))
            for path in project_modules() for match in pattern.finditer(open(path).read())]
    assert not uses

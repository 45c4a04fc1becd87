"""The command line's choices are written out as enums (so mypy checks their uses); each
must offer exactly what the library accepts."""

from __future__ import annotations

import pytest

from attrcert.cli.options import CHOICES


@pytest.mark.parametrize("enum", list(CHOICES), ids=lambda e: e.__name__)
def test_each_enum_offers_the_library_s_list(enum):
    assert tuple(member.value for member in enum) == CHOICES[enum]


def test_every_enum_of_the_options_module_is_checked():
    import enum as enum_module

    from attrcert.cli import options

    declared = {obj for obj in vars(options).values()
                if isinstance(obj, type) and issubclass(obj, enum_module.Enum)
                and obj.__module__ == options.__name__}
    assert declared == set(CHOICES)

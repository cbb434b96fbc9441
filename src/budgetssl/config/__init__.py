"""Config schema, validation and locating the config tree."""

from budgetssl.config.ladder import register as _register_ladder_resolvers
from budgetssl.config.run_name import register as _register_resolvers

_register_resolvers()
_register_ladder_resolvers()

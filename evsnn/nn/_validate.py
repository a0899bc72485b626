from ..functional.checks import check_steps  # noqa: F401
from ._checks import ParameterChecks, check_parameters, check_tensor_state  # noqa: F401

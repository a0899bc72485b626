"""Adapters for snntorch, norse and NIR.

Each submodule imports its third-party library when it is imported itself, so ``import evsnn``
and ``import evsnn.interop`` never import snntorch, norse, nir or nirtorch:

    from evsnn.interop import snntorch as esnn   # needs snntorch (pip install evsnn[snntorch])
    from evsnn.interop import norse as enorse    # needs norse
    from evsnn.interop import nir as enir        # needs nir and nirtorch (pip install evsnn[norse])

The adapters only wrap [`evsnn.functional`][evsnn.functional] and [`evsnn.nn`][evsnn.nn]; no equation lives here.
"""

__all__ = ["snntorch", "norse", "nir"]

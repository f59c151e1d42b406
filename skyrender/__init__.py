"""skyrender: turn HiPS tiles into correct sky images.

The sky-math core of the VLASS portal's rendering tier. It knows nothing of Ray: the
Serve deployments in ``deployments/`` are thin wrappers around these functions.
"""

__version__ = "0.1.0"

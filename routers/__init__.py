"""composer's routers: one scikit-learn-style contract (routers.base.Router), many strategies.

    >>> from routers import make_router, load_router, ROUTERS
    >>> r = make_router("knn").fit(outcome_table)
    >>> r.route(["What is 17 * 23?"])[0].reason

Modules import lazily (see ROUTERS) so `import routers` loads no model and no torch.
"""

from composer.routers.base import ROUTERS, Router, load_router, make_router, router_class

__all__ = ["ROUTERS", "Router", "load_router", "make_router", "router_class"]

"""Which runners are loaded: ``Scheduler`` (queueing, keep-alive, eviction), ``LoadSpec`` (what a
runner is loaded with), and system memory probing."""

from pollama.scheduler.observer import SchedulerObserver
from pollama.scheduler.scheduler import Lease, Loaded, Runner, Scheduler
from pollama.scheduler.spec import LoadSpec, RunningModel

__all__ = ["Lease", "LoadSpec", "Loaded", "Runner", "RunningModel", "Scheduler", "SchedulerObserver"]

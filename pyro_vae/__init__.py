"""pyro-vae: variational autoencoders as Pyro model/guide pairs, trained with SVI."""

from .ais import ais_log_likelihood, bdmc
from .callbacks import Callback, TensorBoard
from .config import Config
from .data import DATASETS, DataError, Dataset, fetch, load_dataset
from .estimators import ESTIMATORS, make_elbo
from .evaluate import active_units, elbo, gradient_snr, kl_per_dimension, log_likelihood
from .iwae import (
    VIMCO,
    DReG,
    ImportanceWeightedELBO,
    RenyiELBO,
    StickingTheLanding,
    TailAdaptiveELBO,
)
from .likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model import VAE
from .networks import Decoder, Encoder
from .preemption import Preempted
from .refinement import Refined, refine
from .relaxed import GumbelSoftmaxELBO, Temperature
from .rundir import RunError, load_run
from .schedules import SCHEDULES
from .spec import ModelSpec, build_model
from .train import fit

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "LIKELIHOODS",
    "SCHEDULES",
    "Callback",
    "Config",
    "DataError",
    "Dataset",
    "DReG",
    "Decoder",
    "Encoder",
    "GumbelSoftmaxELBO",
    "ImportanceWeightedELBO",
    "Likelihood",
    "ModelSpec",
    "Preempted",
    "Refined",
    "RenyiELBO",
    "RunError",
    "StickingTheLanding",
    "TailAdaptiveELBO",
    "Temperature",
    "TensorBoard",
    "VAE",
    "VIMCO",
    "active_units",
    "ais_log_likelihood",
    "bdmc",
    "build_model",
    "elbo",
    "fetch",
    "fit",
    "get_likelihood",
    "gradient_snr",
    "kl_per_dimension",
    "load_dataset",
    "load_run",
    "log_likelihood",
    "make_elbo",
    "refine",
]

"""pyro-vae: variational autoencoders as Pyro model/guide pairs, trained with SVI."""

from .data import DATASETS, DataError, Dataset, fetch, load_dataset
from .estimators import ESTIMATORS, make_elbo
from .evaluate import elbo
from .likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model import VAE
from .networks import Decoder, Encoder
from .train import Config, RunError, fit, load_run

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "LIKELIHOODS",
    "Config",
    "DataError",
    "Dataset",
    "Decoder",
    "Encoder",
    "Likelihood",
    "RunError",
    "VAE",
    "elbo",
    "fetch",
    "fit",
    "get_likelihood",
    "load_dataset",
    "load_run",
    "make_elbo",
]

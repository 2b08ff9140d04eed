"""pyro-vae: variational autoencoders as Pyro model/guide pairs, trained with SVI."""

from .data import DATASETS, DataError, Dataset, fetch, load_dataset
from .estimators import ESTIMATORS, make_elbo
from .evaluate import active_units, elbo, gradient_snr, kl_per_dimension, log_likelihood
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
    "active_units",
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
]

"""SAEs: sets keyed by site (loading, validation, saving) and training."""

from featcirc.saes.loading import (NAMED_SETS, SAE_HUB_ENV, SAEMismatchError, SAEUnavailableError,
                                   load_sae_set_description, load_saes, local_sae_hub, sae_site, save_saes,
                                   site_from_hook_name, validate_sae)

__all__ = ["NAMED_SETS", "SAE_HUB_ENV", "SAEMismatchError", "SAEUnavailableError", "load_saes", "load_sae_set_description",
           "local_sae_hub", "sae_site", "save_saes", "site_from_hook_name", "validate_sae"]

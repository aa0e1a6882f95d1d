"""Active-learning campaigns: train an ensemble, sample where it disagrees, label, retrain (nothing
else in mlip_md imports this package).

``run_campaign(load_campaign_config("campaign.yaml"), "out")`` runs or resumes
a campaign; :mod:`mlip_md.active.config` documents every key.
"""

from mlip_md.active.campaign import CampaignError, campaign_status, run_campaign
from mlip_md.active.config import CampaignConfig, campaign_config_from_dict, load_campaign_config

__all__ = ["CampaignConfig", "CampaignError", "campaign_config_from_dict", "campaign_status",
           "load_campaign_config", "run_campaign"]

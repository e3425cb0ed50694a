"""The method itself: DALLMi's losses, label-balanced sampling, the vectorised step and MixUp."""

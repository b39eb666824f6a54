"""What several labs share: params and tiers, data, models, training, evaluation, runs and CPU kernel pins."""

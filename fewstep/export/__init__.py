"""Export a trained student: diffusers-native folders, fewstep's own folder format, model cards."""

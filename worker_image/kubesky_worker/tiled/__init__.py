"""The Tiled writer: a beamline's runs from its Kafka topic into Tiled, exactly once in effect."""

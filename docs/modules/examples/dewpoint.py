"""The dew point of a place from its temperature (°C) and relative humidity (%), as ``join``
pairs them (Magnus formula, good to about 0.4 °C between -45 and 60 °C)."""

import math

from agent import Module, ModuleConfig, Record

B, C = 17.62, 243.12


class DewPoint(Module[ModuleConfig]):
    description = "Dew point from a joined temperature and humidity."

    def process(self, record: Record) -> None:
        temp, hum = record.data["temp"], record.data["hum"]
        if not 0 < hum <= 100:
            self.context.counters.incr("humidity_out_of_range")
            return
        gamma = math.log(hum / 100) + B * temp / (C + temp)
        dew_point = round(C * gamma / (B - gamma), 2)
        self.context.emit({"sensor": record.data["sensor"], "value": dew_point, "unit": "C"},
                          ts=record.ts)

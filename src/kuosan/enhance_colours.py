"""Colour words people type, with their sRGB value: the single-word names of the xkcd colour
survey (Randall Munroe, 2010; https://xkcd.com/color/rgb/, CC0 1.0 public domain), as matplotlib
ships them in `matplotlib/_color_data.py` (copied here, not imported: matplotlib is not a
dependency). A few crude names and misspelt duplicates are left out.

`kuosan.enhance` maps each to a ShapesWorld colour by the scorer's own rule (nearest palette
hue; a grey, chroma < 32, is a background instead).
"""

_XKCD = """
adobe:bd6c48 algae:54ac68 amber:feb308 amethyst:9b5fc0 apple:6ecb3c apricot:ffb16d aqua:13eac9
aquamarine:04d8b2 asparagus:77ab56 aubergine:3d0734 auburn:9a3001 avocado:90b134 azul:1d5dec
azure:069af3 banana:ffff7e barney:ac1db8 beige:e6daa6 berry:990f4b black:000000 bland:afa88b
blood:770001 blue:0343df blueberry:464196 bluegreen:017a79 bluegrey:85a3b2 bluish:2976bb
blurple:5539cc blush:f29e8e bordeaux:7b002c brick:a03623 bronze:a87900 brown:653700
brownish:9c6d57 bruise:7e4071 bubblegum:ff6cb5 buff:fef69e burgundy:610023 burple:6832e3
butter:ffff81 butterscotch:fdb147 camel:c69f59 camo:7f8f4e canary:fdff63 caramel:af6f09
carmine:9d0216 carnation:fd798f celadon:befdb7 celery:c1fd95 cement:a5a391 cerise:de0c62
cerulean:0485d1 charcoal:343837 chartreuse:c1f80a cherry:cf0234 chestnut:742802
chocolate:3d1c02 cinnamon:ac4f06 claret:680018 clay:b66a50 cobalt:1e488f cocoa:875f42
coffee:a6814c copper:b66325 coral:fc5a50 cornflower:6a79f7 cranberry:9e003a cream:ffffc2
creme:ffffb6 crimson:8c000f custard:fffd78 cyan:00ffff dandelion:fedf08 dark:1b2431
darkblue:030764 darkgreen:054907 denim:3b638c desert:ccad60 dirt:8a6e45 drab:828344
dusk:4e5481 dust:b2996e earth:a2653e ecru:feffca eggplant:380835 eggshell:ffffd4
emerald:01a049 evergreen:05472a fawn:cfaf7b fern:63a950 forest:0b5509 fuchsia:ed0dd9
gold:dbb40c golden:f5bf03 goldenrod:fac205 grape:6c3461 grapefruit:fd5956 grass:5cac2d
green:15b01a greenblue:23c48b greenish:40a368 grey:929591 greyblue:77a1b5 greyish:a8a495
gunmetal:536267 hazel:8e7618 heather:a484ac heliotrope:d94ff5 ice:d6fffa indigo:380282
iris:6258c4 ivory:ffffcb jade:1fa774 khaki:aaa662 kiwi:9cef43 lavender:c79fef leaf:71aa34
leather:ac7434 lemon:fdff52 lichen:8fb67b lightblue:7bc8f6 lightgreen:76ff7b lilac:cea2fd
lime:aaff32 lipstick:d5174e magenta:c20078 mahogany:4a0100 maize:f4d054 mango:ffa62b
manilla:fffa86 marigold:fcc006 marine:042e60 maroon:650021 mauve:ae7181 melon:ff7855
merlot:730039 midnight:03012d mint:9ffeb0 mocha:9d7651 moss:769958 mud:735c12 mulberry:920a4e
mushroom:ba9e88 mustard:ceb301 navy:01153e ocean:017b92 ocher:bf9b0c ochre:bf9005 olive:6e750e
orange:f97306 orangeish:fd8d49 orangered:fe420f orangish:fc824a orchid:c875c4 pale:fff9d0
parchment:fefcaf pea:a4bf20 peach:ffb07c pear:cbf85f periwinkle:8e82fe petrol:005f6a
pine:2b5d34 pink:ff81c0 pinkish:d46a7e pinky:fc86aa pistachio:c0fa8b plum:580f41 puce:a57e52
pumpkin:e17701 purple:7e1e9c purpleish:98568d purpley:8756e4 purplish:94568c purply:983fb2
putty:beae8a raspberry:b00149 red:e50000 reddish:c44240 rosa:fe86a4 rose:cf6275 rouge:ab1239
royal:0c1793 ruby:ca0147 russet:a13905 rust:a83c09 saffron:feb209 sage:87ae73 salmon:ff796c
sand:e2ca76 sandstone:c9ae74 sandy:f1da7a sapphire:2138ab scarlet:be0119 sea:3c9992
seafoam:80f9ad seaweed:18d17b sepia:985e2b shamrock:01b44c sienna:a9561e silver:c5c9c7
sky:82cafc slate:516572 spearmint:1ef876 spruce:0a5f38 squash:f2ab15 steel:738595 stone:ada587
straw:fcf679 strawberry:fb2943 sunflower:ffc512 swamp:698339 tan:d1b26f tangerine:ff9408
taupe:b9a281 tea:65ab7c teal:029386 tealish:24bca8 terracotta:ca6641 tomato:ef4026
topaz:13bbaf turquoise:06c2ac twilight:4e518b ultramarine:2000b1 umber:b26400 velvet:750851
vermillion:f4320c violet:9a0eea viridian:1e9167 watermelon:fd4659 wheat:fbdd7e white:ffffff
wine:80013f wintergreen:20f986 wisteria:a87dc2 yellow:ffff14 yellowgreen:bbf90f
yellowish:faee66
"""  # 236 names
XKCD_COLOURS: dict[str, str] = dict(item.split(":") for item in _XKCD.split())

"""Vocabularies for the generators: words to read, chart labels, merchants and shop items.

Kept in code (not data files) so that they ship with the package as they are.
"""
from __future__ import annotations

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]

COMMON_WORDS = """
about above across act add age ago agree air all allow almost alone along also always among amount and angle
animal answer apple area arm army art ask away baby back bad bag ball band bank base basket bath bear beat
bed bell belt best bird birth black blade block blood blue board boat body bone book boot bottle box boy
brain bread break brick bridge bright bring brother brown brush bucket build burn bus busy butter button buy
cake call camp can candle cap car card care carry case cat cause cell chain chair chalk change cheap cheese
chest chief child chin circle city class clean clear climb clock close cloth cloud coat coffee cold colour
come copper corn cost cotton cough count country cover cow crack cream crime cross crowd cry cup current
curtain curve cushion cut dance danger dark date day dead dear deep degree desk dinner dirty dog door down
drain draw dream dress drink drive drop dry dust ear early earth east easy eat edge egg engine enjoy enough
even event every eye face fact fall family farm fast father fear feather feed field fight figure fill film
find fine finger fire first fish flag flame flat floor flower fly fold food foot force fork form frame free
fresh friend front fruit full game garden gate gift girl give glass glove goat gold good grain grass great
green grey grip group grow guide hair half hammer hand happy harbour hat head heart heat heavy help high hill
history hole home honey hook hope horn horse hospital hot hour house ice idea inch ink iron island jelly
jewel join journey juice jump kettle key kind king kiss knee knife knot lamp land large last late laugh lead
leaf learn leather left leg lemon letter level library light limit line lion lip liquid list little lock
long loud love low lunch machine magic map market mask match meal meat metal milk mind minute mirror money
monkey month moon morning mother mountain mouse mouth music nail name narrow nation near neck needle nest net
new news night noise north nose note number nut ocean offer office oil old open orange oven owner page paint
paper parcel park part party past paste pen pencil people pepper picture pig pin pipe place plane plant plate
play pocket point poison polish pot potato powder power price print prison pump purple quick quiet rabbit rail
rain range rat reason red rice ring river road rock roof room root rope rose round rule safe sail salt sand
school science scissors screw sea seat second seed shade shadow shake sharp sheep shelf ship shirt shoe short
silk silver sister size skin skirt sky sleep slope small smile smoke snake snow soap sock soft song sound soup
south space spade spoon spring square stage stamp star start station steam steel stem step stick stone stop
store storm story street string sugar summer sun swim table tail talk taste tax tea teeth test thread thumb
ticket tiger time tin toe tongue tool tooth top touch town toy train tray tree truck turn twist umbrella
uncle valley value verse vessel view voice walk wall warm wash watch water wave wax way weather week weight
west wheel whip whistle white wide window wine wing winter wire woman wood wool word work worm wound yellow
young zebra zero
""".split()

CHART_LABEL_SETS = [
    ["A", "B", "C", "D", "E", "F", "G", "H"],
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"],
    ["Q1", "Q2", "Q3", "Q4"],
    ["North", "South", "East", "West"],
    ["apple", "pear", "plum", "fig", "kiwi", "lime"],
    ["2019", "2020", "2021", "2022", "2023", "2024"],
]
CHART_TITLES = ["Sales", "Visitors", "Revenue", "Orders", "Rainfall", "Scores", "Downloads", "Output", "Votes", ""]

MERCHANTS = [
    "Corner Cafe", "Green Grocer", "City Books", "Blue Bottle Deli", "Sunrise Bakery", "Harbour Fish Bar",
    "Metro Market", "Oak Hardware", "Pixel Electronics", "Maple Pharmacy", "Riverside Diner", "Golden Wok",
    "Fresh Mart", "The Tea Room", "Northside Pizza", "Lucky Noodle", "Hilltop Coffee", "Main St Grocery",
    "Bright Stationers", "Daily Bread", "Pine Garden Centre", "Quick Stop", "Seaside Ice Cream", "Urban Pet Shop",
]
ITEMS = [
    "Coffee", "Latte", "Tea", "Croissant", "Bagel", "Muffin", "Sandwich", "Salad", "Soup", "Water", "Juice",
    "Milk 1L", "Eggs 12", "Bread", "Butter", "Cheese", "Apples", "Bananas", "Tomatoes", "Rice 1kg", "Pasta",
    "Olive Oil", "Notebook", "Pen Set", "Batteries", "USB Cable", "Shampoo", "Soap", "Toothpaste", "Plasters",
    "Dog Food", "Cat Treats", "Seeds", "Plant Pot", "Pizza", "Noodles", "Dumplings", "Fries", "Burger", "Cola",
    "Ice Cream", "Cookies", "Chocolate", "Candle", "Light Bulb", "Tape", "Screws", "Glue", "Gloves", "Napkins",
]
CURRENCIES = {"USD": "$", "EUR": "EUR", "GBP": "GBP", "CHF": "CHF"}
